"""The study's named profiles: per stage (vqvae, train, grid, summary, classifier, analysis, prior), the
overrides of its configuration dataclasses; `vqlib run --profile NAME` runs one (vqlib/study.py).

A module of its own, without torch or pandas, so that `vqlib`'s parser can offer the names quickly.
"""

from __future__ import annotations

import copy
from typing import Any

from .errors import ConfigError

PROFILES: dict[str, dict[str, Any]] = {
    # A CPU laptop: `make run` on a fresh clone took 14 minutes on 2 cores (the study itself 743 s,
    # notebook 06 156 s of it; the rest creating the venv and checking the data; docs/reproducing.md).
    # Each grid point sees 10,000 training images twice (about 50 s with its kernel start); the code
    # is still good enough for the classifier to pass 85 % test accuracy.
    "quick": {
        "description": "reduced epochs and training subset, the full 3 x 3 grid; about 14 minutes on a 2-core CPU (the study about 750 s, plus set-up)",
        "vqvae": {},
        "train": {"epochs": 2, "train_subset": 10_000},
        "grid": {},
        "summary": {},
        # Label efficiency without the ConvNet on pixels (the slowest baseline) and with one seed.
        # C = 1 was never chosen on validation in a measured quick run, and costs the most iterations;
        # 0.01 was chosen in 5 of 6 fits, so the grid reaches below it. The probe on the continuous
        # latents (z_linear) stays: beside vq_linear it is what quantization costs. The iteration cap
        # stays at 100 to keep the profile quick; the rows record which fits stop there. Measured on the
        # K100_D16 quick model: 300 iterations make the probe on the code converge at 10 and 100 labels per
        # class, but not at 1,000, where its fit took 156 s instead of 40 s.
        # The classifiers keep the short caps of the first studies (8 epochs, patience 3); each records
        # whether it stopped by patience or at the cap.
        "classifier": {
            "epochs": 8,
            "patience": 3,
            "label_counts": "10,100,1000",
            "num_seeds": 1,
            "methods": "vq_head,vq_linear,z_linear,pixel_linear",
            "linear_max_iter": 100,
            "linear_c": "0.003,0.01,0.1",
        },
        "analysis": {"tsne_points": 2000},
        # A small class-conditional transformer on 5,000 training codes for 2 epochs, every measure of notebook 06
        # on 2,000 samples, the classifier that judges them trained on 5,000 real images. Measured with
        # 6,000 codes, 10,000 judge images, 5 judge and 8 CAS epochs: 1,000 CPU seconds, a third each for
        # the prior, the judge and the three CAS classifiers (docs/prior.md); these sizes about halve it.
        "prior": {
            "class_conditional": True,
            "layers": 2,
            "heads": 2,
            "width": 64,
            "epochs": 2,
            "warmup_steps": 20,
            "train_subset": 5000,
            "val_subset": 500,
            "test_subset": 2000,
            "num_samples": 2000,
            "feature_train_subset": 5000,
            "feature_epochs": 4,
            "cas_train_size": 2000,
            "cas_val_size": 500,
            "cas_epochs": 5,
            "nearest_images": 1000,
            "guidance_samples": 500,
        },
    },
    # The protocol of the original study: 50 epochs on all 55,000 training images. About 7-10 hours on a
    # 2-core CPU (two configurations at once, one thread each); minutes per configuration on a GPU.
    "full": {
        "description": "the original study's protocol: 50 epochs on all training data, 3 x 3 grid; hours on a CPU, a GPU job",
        "vqvae": {},
        "train": {"epochs": 50, "train_subset": None},
        "grid": {},
        "summary": {},
        # The protocol: the frozen head and the fine-tuned classifier, and label efficiency
        # for the five methods at 10 / 100 / 1,000 / all labels x 3 seeds.
        # The networks (head, fine-tuned classifier, pixel CNN) train until 5 epochs bring no better validation
        # accuracy, within a cap of 100 that only bounds a run gone wrong.
        "classifier": {
            "label_counts": "10,100,1000,all",
            "num_seeds": 3,
            "compare_finetune": True,
            "epochs": 100,
            "patience": 5,
            "cnn_epochs_all": 100,
        },
        "analysis": {"tsne_points": 10_000},
        # The protocol's prior: the default PriorConfig's network (a 4 x 128 transformer on all 55,000
        # training codes), class-conditional, 6 epochs (the published pretrained:K100_D64_prior: notebook 06
        # measures it instead of training it again when the grid chooses K100_D64); notebook 06's measures at
        # their defaults (10,000 samples, CAS on 55,000 samples).
        # Guidance 0.5: the smallest Fréchet distance to the validation images among 0, 0.5, 1, 2 and 3
        # (docs/prior.md, "Guidance"); notebook 06 shows that comparison again beside its samples.
        "prior": {"class_conditional": True, "epochs": 6, "guidance": 0.5},
    },
}
PROFILE_STAGES = ("vqvae", "train", "grid", "summary", "classifier", "analysis", "prior")


def get_profile(profile: str | dict) -> dict[str, Any]:
    """A copy of a named profile, or a custom one (a dict of stage -> overrides) filled in with empty stages."""
    if isinstance(profile, str):
        if profile not in PROFILES:
            raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
        profile = PROFILES[profile]
    unknown = sorted(set(profile) - {*PROFILE_STAGES, "description"})
    if unknown:
        raise ConfigError(f"unknown profile stage(s): {', '.join(unknown)}; stages are {', '.join(PROFILE_STAGES)}")
    return {"description": "", **{stage: {} for stage in PROFILE_STAGES}, **copy.deepcopy(profile)}
