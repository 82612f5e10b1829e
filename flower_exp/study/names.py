"""The names a sweep records under: MLflow tags and metrics of its runs, Optuna study and trial
user attrs. In one place because the objective, the parent run, the stale-trial handler, the
summaries and the tests all write or read them."""

from ..tracking import TAG_PREFIX

TAG_SWEEP = TAG_PREFIX + "sweep"
TAG_TRIAL = TAG_PREFIX + "trial_number"
# The sweep parent's metrics carry the sweep_ prefix: a parent logging a trial's metric name
# (best_val_macro_f1) would rank among its own trials in every runs table sorted by it.
METRIC_SWEEP_BEST = "sweep_best_val_macro_f1"  # best so far, step = trial number
METRIC_SWEEP_BEST_FINAL = METRIC_SWEEP_BEST + "_final"
ATTR_PARENT = "mlflow_parent_run_id"
ATTR_RUN = "mlflow_run_id"
ATTR_FAIL = "fail_reason"
ATTR_ENQUEUED = "flower_exp_enqueued"
ATTR_RETRY_OF = "retry_of_trial"
ATTR_STOPPED_BY = "stopped_by"
# A continuation (the end of a budgeted sweep with continue_best): the number of the trial whose
# best epoch's weights it trains on from.
ATTR_CONTINUES = "continues_trial"
# A trial whose result could not be recorded (tracking server down, disk full): FAILED but not
# counted against the budget, and queued again with the same params.
ATTR_NOT_RECORDED = "recording_error"
ATTR_UNRECORDED_RUN = "unrecorded_run_id"
# A trial whose configuration was invalid (a sweep file that slipped past validation): FAILED,
# not counted against the budget, and the sweep stops.
ATTR_CONFIG_ERROR = "config_error"
