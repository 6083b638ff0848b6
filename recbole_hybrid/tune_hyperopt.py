"""The hyperopt engine: RecBole's `HyperTuning`, each trial one `recbole_hybrid.run`.

What HyperTuning needs on this stack, besides compat's exhaustive-search fix: a failing
trial (e.g. impossible hyperparameters) is recorded and reported to hyperopt as failed
instead of ending the search; quniform values reach RecBole as ints; plotting (plotly) is
not used.
"""

import os
import traceback

import hyperopt
from recbole.trainer import HyperTuning

from recbole_hybrid import jsonl
from recbole_hybrid.errors import UserError, last_line
from recbole_hybrid.tune import as_config_values, trial_record


class RecordingHyperTuning(HyperTuning):
    """HyperTuning whose trials are recorded as they end, failures included."""

    def __init__(self, search, space, trials_file, log, **kwargs):
        super().__init__(self._objective, **kwargs)  # sets self.space, hyperopt's form of it
        self.search, self.parsed_space, self.trials_file, self.log = search, space, trials_file, log
        self.trials = []

    def _objective(self, config_dict, config_file_list):
        params = as_config_values(config_dict, self.parsed_space)
        result = self.search.run_trial(params)
        record = trial_record(params, result)
        self._record(record)
        return {"model": self.search.model, "best_valid_score": result["best_valid_score"],
                "valid_score_bigger": result["valid_metric_bigger"],
                "best_valid_result": result["best_valid_result"],
                "test_result": result["test_result"]}

    def trial(self, params):
        try:
            return super().trial(params)
        except Exception as error:  # one bad trial does not end the search
            message = str(error) if isinstance(error, UserError) else traceback.format_exc()
            self._record(trial_record(as_config_values(params, self.parsed_space), error=message.strip()))
            self.log(f"trial {len(self.trials)} failed: {last_line(message)}")
            # a loss too: hyperopt's early-stop function reads it from every trial
            return {"status": hyperopt.STATUS_FAIL, "loss": float("inf")}

    def _record(self, record):
        self.trials.append(record)
        jsonl.append(self.trials_file, record)
        if record["status"] == "ok":
            self.log(f"trial {len(self.trials)}: {record['params']} -> best valid "
                     f"{self.search.valid_metric} {record['best_valid_score']:.4f}")


def run_hyperopt(search, params_file, space, algo, max_evals, log):
    tuning = RecordingHyperTuning(
        search, space, os.path.join(search.output, "trials.jsonl"), log,
        params_file=params_file, algo=algo, max_evals=max_evals,
        early_stop=max(10, max_evals),  # RecBole's default 10 would cut longer searches short
    )
    log(f"hyperopt {algo} search of {search.model} on {search.dataset}, "
        f"{tuning.max_evals} trials")
    try:
        tuning.run()
    except hyperopt.exceptions.AllTrialsFailed:
        return tuning.trials  # each failure is recorded with its error
    tuning.export_result(output_file=os.path.join(search.output, "hyperopt_results.txt"))
    return tuning.trials
