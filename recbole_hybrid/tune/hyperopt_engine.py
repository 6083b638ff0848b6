"""The hyperopt engine: RecBole's `HyperTuning`, each trial one `recbole_hybrid.run`.

What HyperTuning needs on this stack, besides compat's exhaustive-search fix: a failing
trial (e.g. impossible hyperparameters) is recorded and reported to hyperopt as failed
instead of ending the search; quniform values reach RecBole as ints; plotting (plotly) is
not used.

hyperopt draws from the settings' `seed`, so the same command proposes the same trials;
that is how an interrupted search resumes: run again with `resume`, the proposals whose
trial finished before (in trials.jsonl) take that trial's result instead of training.
"""

import json
import os
import traceback

import hyperopt
import numpy as np
from recbole.trainer import HyperTuning

from recbole_hybrid.errors import UserError, last_line
from recbole_hybrid.tune.space import as_config_values, as_params_dict
from recbole_hybrid.tune.trials import trial_record
from recbole_hybrid.utils import jsonl

HOW_TO_GO_ON = "continue it with the same command and --resume (finished trials are kept)"
TRIALS_FILE = "trials.jsonl"  # each trial appended as it ends


class RecordingHyperTuning(HyperTuning):
    """HyperTuning whose trials are recorded as they end, failures included."""

    def __init__(self, setup, space, trials_file, log, finished=(), **kwargs):
        super().__init__(self._objective, **kwargs)  # sets self.space, hyperopt's form of it
        self.setup, self.parsed_space, self.trials_file, self.log = setup, space, trials_file, log
        self.trials = []
        self.finished = {_key(t["params"]): t for t in finished}  # of an interrupted search

    def _objective(self, config_dict, config_file_list):
        params = as_config_values(config_dict, self.parsed_space)
        record = self.finished.pop(_key(params), None)
        if record is None:
            record = trial_record(params, self.setup.run_trial(params))
            self._record(record)
        else:
            self.trials.append(record)
            self.log(f"trial {len(self.trials)}: {params} finished before the search was "
                     "interrupted: its result, not trained again")
        return {"model": self.setup.model, "best_valid_score": record["best_valid_score"],
                "valid_score_bigger": self.setup.bigger,
                "best_valid_result": record.get("best_valid_result", {}),
                "test_result": record["test_result"]}

    def run(self):
        """RecBole's run, drawing from the settings' seed, with hyperopt's progress bar only
        where show_progress asks for it (each trial is logged as it ends)."""
        hyperopt.fmin(self.trial, self.space, algo=self.algo, max_evals=self.max_evals,
                      early_stop_fn=self.early_stop_fn, show_progressbar=self.setup.show_progress,
                      rstate=np.random.default_rng(self.setup.seed))

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


def _key(params):
    return json.dumps(params, sort_keys=True, default=str)


def _read_trials(trials_file):
    return jsonl.read(trials_file, ("params", "status"))[0]


def started(output):
    return os.path.isfile(os.path.join(output, TRIALS_FILE))


def check_output(setup, resume):
    """--resume needs the trials file of an earlier search; without it, a search never
    writes over an earlier one."""
    if resume:
        if not started(setup.output):
            raise UserError(f"--resume: no hyperopt search in {setup.output} ({TRIALS_FILE} is "
                            "missing); pass the --output of the search to continue")
        return
    earlier = [n for n in (TRIALS_FILE, "best.yaml", "trials.md")
               if os.path.exists(os.path.join(setup.output, n))]
    if earlier:
        raise UserError(f"{setup.output} holds an earlier search ({', '.join(earlier)}); a "
                        "second search would overwrite it: pass --resume to continue it, or "
                        "another --output")


def run(setup, space, algo, max_evals, options, log):
    """RecBole's HyperTuning over the space read from the params file (not read again by
    RecBole's own parser, which takes less); (trials, interrupted)."""
    trials_file = os.path.join(setup.output, TRIALS_FILE)
    finished = [t for t in _read_trials(trials_file) if t["status"] == "ok"] \
        if options["resume"] else []
    tuning = RecordingHyperTuning(
        setup, space, trials_file, log, finished,
        params_dict=as_params_dict(space), algo=algo, max_evals=max_evals,
        early_stop=max(10, max_evals),  # RecBole's default 10 would cut longer searches short
    )
    log(f"hyperopt {algo} search of {setup.model} on {setup.dataset}, "
        f"{tuning.max_evals} trials" + (f", {len(finished)} finished before" if finished else ""))
    try:
        tuning.run()
    except hyperopt.exceptions.AllTrialsFailed:
        return tuning.trials, False  # each failure is recorded with its error
    except KeyboardInterrupt:  # the trials that ended are in the trials file
        return _read_trials(trials_file), True
    tuning.export_result(output_file=os.path.join(setup.output, "hyperopt_results.txt"))
    return tuning.trials, False
