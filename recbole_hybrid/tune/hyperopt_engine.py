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

from recbole_hybrid.errors import UserError, last_line
from recbole_hybrid.tune.space import as_config_values, as_params_dict
from recbole_hybrid.tune.trials import trial_record
from recbole_hybrid.utils import jsonl

HOW_TO_GO_ON = "a hyperopt search does not resume: run it again with another --output"
TRIALS_FILE = "trials.jsonl"  # each trial appended as it ends


class RecordingHyperTuning(HyperTuning):
    """HyperTuning whose trials are recorded as they end, failures included."""

    def __init__(self, setup, space, trials_file, log, **kwargs):
        super().__init__(self._objective, **kwargs)  # sets self.space, hyperopt's form of it
        self.setup, self.parsed_space, self.trials_file, self.log = setup, space, trials_file, log
        self.trials = []

    def _objective(self, config_dict, config_file_list):
        params = as_config_values(config_dict, self.parsed_space)
        result = self.setup.run_trial(params)
        record = trial_record(params, result)
        self._record(record)
        return {"model": self.setup.model, "best_valid_score": result["best_valid_score"],
                "valid_score_bigger": result["valid_metric_bigger"],
                "best_valid_result": result["best_valid_result"],
                "test_result": result["test_result"]}

    def run(self):
        """RecBole's run, with hyperopt's progress bar only where show_progress asks for it
        (each trial is logged as it ends)."""
        hyperopt.fmin(self.trial, self.space, algo=self.algo, max_evals=self.max_evals,
                      early_stop_fn=self.early_stop_fn, show_progressbar=self.setup.show_progress)

    def trial(self, params):
        try:
            return super().trial(params)
        except Exception as error:  # one bad trial does not end the search
            message = str(error) if isinstance(error, UserError) else traceback.format_exc()
            params = as_config_values(params, self.parsed_space)
            self._record(trial_record(params, error=message.strip()))
            self.log(f"trial {len(self.trials)} failed: {last_line(message)}")
            # a loss too: hyperopt's early-stop function reads it from every trial
            return {"status": hyperopt.STATUS_FAIL, "loss": float("inf")}

    def _record(self, record):
        self.trials.append(record)
        jsonl.append(self.trials_file, record)
        if record["status"] == "ok":
            self.log(f"trial {len(self.trials)}: {record['params']} -> best valid "
                     f"{self.setup.valid_metric} {record['best_valid_score']:.4f}")


def check_output(setup, resume):
    """A hyperopt search does not resume, and never writes over an earlier search."""
    if resume:
        raise UserError("--resume continues Ray Tune experiments; a hyperopt search "
                        f"starts again (its finished trials are in {TRIALS_FILE})")
    earlier = [n for n in (TRIALS_FILE, "best.yaml", "trials.md")
               if os.path.exists(os.path.join(setup.output, n))]
    if earlier:
        raise UserError(f"{setup.output} holds an earlier search ({', '.join(earlier)}); a "
                        "second search would overwrite it: pass another --output")


def run(setup, space, algo, max_evals, options, log):
    """RecBole's HyperTuning over the space read from the params file (not read again by
    RecBole's own parser, which takes less); (trials, interrupted)."""
    trials_file = os.path.join(setup.output, TRIALS_FILE)
    tuning = RecordingHyperTuning(
        setup, space, trials_file, log,
        params_dict=as_params_dict(space), algo=algo, max_evals=max_evals,
        early_stop=max(10, max_evals),  # RecBole's default 10 would cut longer searches short
    )
    log(f"hyperopt {algo} search of {setup.model} on {setup.dataset}, "
        f"{tuning.max_evals} trials")
    try:
        tuning.run()
    except hyperopt.exceptions.AllTrialsFailed:
        return tuning.trials, False  # each failure is recorded with its error
    except KeyboardInterrupt:  # the trials that ended are in the trials file
        return jsonl.read(trials_file, ("params", "status"))[0], True
    tuning.export_result(output_file=os.path.join(setup.output, "hyperopt_results.txt"))
    return tuning.trials, False
