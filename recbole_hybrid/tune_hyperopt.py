"""The hyperopt engine: RecBole's `HyperTuning`, each trial one `recbole_hybrid.run`.

What HyperTuning needs on this stack, besides compat's exhaustive-search fix: a failing
trial (e.g. impossible hyperparameters) is recorded and reported to hyperopt as failed
instead of ending the search; quniform values reach RecBole as ints; plotting (plotly) is
not used.
"""

import os
import traceback

from recbole.trainer import HyperTuning

from recbole_hybrid.errors import UserError
from recbole_hybrid.tune import append_jsonl, as_config_values, trial_record


class RecordingHyperTuning(HyperTuning):
    """HyperTuning whose trials are recorded as they end, failures included."""

    def __init__(self, search, space, jsonl, log, **kwargs):
        super().__init__(self._objective, **kwargs)
        self.search, self.types, self.jsonl, self.log = search, space, jsonl, log
        self.trials = []

    def _objective(self, config_dict, config_file_list):
        params = as_config_values(config_dict, self.types)
        result = self.search.run_trial(params)
        record = trial_record(params, result)
        self._record(record)
        return {"model": self.search.model, "best_valid_score": result["best_valid_score"],
                "valid_score_bigger": result["valid_metric_bigger"],
                "best_valid_result": result["best_valid_result"],
                "test_result": result["test_result"]}

    def trial(self, params):
        import hyperopt

        try:
            return super().trial(params)
        except Exception as error:  # one bad trial does not end the search
            message = str(error) if isinstance(error, UserError) else traceback.format_exc()
            self._record(trial_record(as_config_values(params, self.types), error=message.strip()))
            self.log(f"trial {len(self.trials)} failed: {message.strip().splitlines()[-1]}")
            # a loss too: hyperopt's early-stop function reads it from every trial
            return {"status": hyperopt.STATUS_FAIL, "loss": float("inf")}

    def _record(self, record):
        self.trials.append(record)
        append_jsonl(self.jsonl, record)
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
    tuning.run()
    tuning.export_result(output_file=os.path.join(search.output, "hyperopt_results.txt"))
    return tuning.trials
