"""The published study: grid runs copied into tracked folders, and back.

A finished grid run is published as soon as it ends, so that a long study that
spans several machines or sessions loses at most the run in progress:

- ``checkpoints/pretrained/NAME/``: best.pt, config.json, history.json
  (``pretrained:NAME`` loads it anywhere a checkpoint is taken);
- ``results/published/grid/NAME/``: metrics.json (its checkpoint named
  ``pretrained:NAME``), run.json and the executed notebook.

A run still training is snapshotted too (`snapshot_unfinished`): its last.pt,
best.pt and history in ``checkpoints/inprogress/NAME/``, replaced at every
publish and removed once the run is published as finished. `restore_runs`
copies both back into a grid's folders, so that ``vqlib run --profile full``
on a fresh clone reuses the finished runs and continues the unfinished ones
from their last snapshotted epoch. The finished rows of a label-efficiency
study that are not published (its classifier is not, or it runs again with
other settings) are snapshotted the same way, with the last epoch of each
network row under way (`snapshot_label_efficiency`,
``checkpoints/inprogress/label_efficiency/``), and restored, with the published
ones, by `restore_label_efficiency`. A finished run publishes no last.pt
(optimiser state): only what is small and useful stays.

Once the grid has chosen its best configuration among published runs, the
stages after it are published too (`publish_stages`), each only when all its
outputs exist, so that a published set never looks complete when it is not:

- ``results/published/grid/``: notebook 02's loss curves and K x D heatmaps;
- the chosen classifier (notebook 03's, on the best VQ-VAE) as
  ``checkpoints/pretrained/RUN/`` (``pretrained:RUN``) and its metrics, test
  report and label efficiency (with its finished rows, label_efficiency.runs.jsonl)
  in ``results/published/classifier/RUN/``;
- ``results/published/analysis/``: notebook 04's analysis.json and figures;
- ``results/published/reports/``: the HTML reports and index.html, once the
  three stages above are published and the reports are newer than their notebooks.

Beside the study, `publish_seed_spread` publishes the summary of a grid run
with several seeds (``vqlib grid --seeds 0,1,2``) into
``results/published/seed_spread/summary.csv``: the seed-to-seed spread that
says whether the study's winner won by more than the noise of one training run.

A grid trained at the protocol with the cosine learning rate (``vqlib grid --lr-schedule cosine``)
publishes apart from the study whose run names it shares (`publish_lr_schedule`): its runs in
``results/published/lr_schedule/NAME/``, their checkpoints as ``pretrained:NAME_cosine``, its
unfinished runs snapshotted in ``checkpoints/inprogress/lr_schedule/NAME/``, and a summary and
a comparison with the published constant-rate runs of the same seeds beside them.

No published JSON names a path of the machine that ran the study: checkpoints
become ``pretrained:NAME``, other paths inside the project become relative.

The parts: `common` (the published folders, portable paths, the writer), `runs`
(the grid's runs, the snapshots and their restoration), `stages` (the stages
after the grid), `seeds` (seed spreads and the cosine schedule beside the study)
and `priors`. Everything is imported from ``vqlib.publish``.
"""

from __future__ import annotations

from .common import (
    CHECKPOINT_FILES,
    CLASSIFIER_RESULT_FILES,
    PUBLISHED_LIMIT_BYTES,
    RESULT_FILES,
    SNAPSHOT_FILES,
    StageResult,
    _copy,
    _lines,
    _missing,
    _same_checkpoint,
    _Writer,
    inprogress_dir,
    portable,
    portable_text,
    portable_vqvae_payload,
    published_analysis_dir,
    published_bytes,
    published_classifier_dir,
    published_folders,
    published_grid_dir,
    published_reports_dir,
    published_seed_spread_dir,
    run_renames,
    source_project_root,
)
from .priors import (
    PRIOR_FILES,
    PRIOR_SNAPSHOT_FILES,
    _portable_prior_payload,
    prior_snapshots_dir,
    publish_prior,
    published_prior_name,
    restore_priors,
)
from .runs import (
    LabelEfficiencySnapshot,
    _publish_choice,
    _rows_published,
    _unfinished_rows,
    finished_runs,
    label_efficiency_snapshots,
    publish_runs,
    restore_label_efficiency,
    restore_runs,
    snapshot_label_efficiency,
    snapshot_unfinished,
)
from .seeds import (
    COMPARISON_FILE,
    LR_SCHEDULE,
    LR_SCHEDULE_COLUMNS,
    LR_SCHEDULE_METRICS,
    LR_SCHEDULE_SUFFIX,
    SEED_SPREAD_COLUMNS,
    _check_cosine,
    _recorded_schedule,
    lr_schedule_comparison,
    lr_schedule_snapshots_dir,
    lr_schedule_summary,
    publish_lr_schedule,
    publish_lr_schedule_comparison,
    publish_protocol_seeds,
    publish_seed_spread,
    published_lr_schedule_dir,
    published_protocol_seeds_dir,
    restore_lr_schedule,
    snapshot_lr_schedule,
)
from .stages import (
    _publish_analysis,
    _publish_classifier,
    _publish_codec,
    _publish_judge,
    _publish_prior_measures,
    _publish_reports,
    _publish_summary,
    publish_stages,
    published_codec_dir,
    published_prior_measures_dir,
)

__all__ = [
    "CHECKPOINT_FILES",
    "CLASSIFIER_RESULT_FILES",
    "COMPARISON_FILE",
    "LR_SCHEDULE",
    "LR_SCHEDULE_COLUMNS",
    "LR_SCHEDULE_METRICS",
    "LR_SCHEDULE_SUFFIX",
    "LabelEfficiencySnapshot",
    "PRIOR_FILES",
    "PRIOR_SNAPSHOT_FILES",
    "PUBLISHED_LIMIT_BYTES",
    "RESULT_FILES",
    "SEED_SPREAD_COLUMNS",
    "SNAPSHOT_FILES",
    "StageResult",
    "_Writer",
    "_check_cosine",
    "_copy",
    "_lines",
    "_missing",
    "_portable_prior_payload",
    "_publish_analysis",
    "_publish_choice",
    "_publish_classifier",
    "_publish_codec",
    "_publish_judge",
    "_publish_prior_measures",
    "_publish_reports",
    "_publish_summary",
    "_recorded_schedule",
    "_rows_published",
    "_same_checkpoint",
    "_unfinished_rows",
    "finished_runs",
    "inprogress_dir",
    "label_efficiency_snapshots",
    "lr_schedule_comparison",
    "lr_schedule_snapshots_dir",
    "lr_schedule_summary",
    "portable",
    "portable_text",
    "portable_vqvae_payload",
    "prior_snapshots_dir",
    "publish_lr_schedule",
    "publish_lr_schedule_comparison",
    "publish_prior",
    "publish_protocol_seeds",
    "publish_runs",
    "publish_seed_spread",
    "publish_stages",
    "published_analysis_dir",
    "published_bytes",
    "published_classifier_dir",
    "published_codec_dir",
    "published_folders",
    "published_grid_dir",
    "published_lr_schedule_dir",
    "published_prior_measures_dir",
    "published_prior_name",
    "published_protocol_seeds_dir",
    "published_reports_dir",
    "published_seed_spread_dir",
    "restore_label_efficiency",
    "restore_lr_schedule",
    "restore_priors",
    "restore_runs",
    "run_renames",
    "snapshot_label_efficiency",
    "snapshot_lr_schedule",
    "snapshot_unfinished",
    "source_project_root",
]
