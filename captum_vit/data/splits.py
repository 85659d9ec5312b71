"""Every seed of the synthetic benchmark, in one place: which images each one renders and
what they are for.

A seed names a split: :func:`captum_vit.data.synthetic.generate` and
:class:`~captum_vit.data.synthetic.SyntheticDataset` render the same images for the same seed
on every machine. The splits never overlap, so no figure is measured on images a model or an
explainer was trained or selected on. The values are those the shipped weights and the
recorded figures were produced with: changing one changes the figures.

Examples
--------
>>> len({CLASSIFIER_TRAIN_SEED, LTX_VAL_SEED, DIFFMASK_VAL_SEED, HELD_OUT_SEED, BENCHMARK_SEED})
5
>>> classifier_epoch_seed(4)
1004
"""

from __future__ import annotations

#: Training images of the shipped classifiers (``captum-vit train-models``): epoch ``e``
#: renders a fresh set with seed ``CLASSIFIER_TRAIN_SEED + e`` (see
#: :func:`classifier_epoch_seed`), so no image is seen twice.
CLASSIFIER_TRAIN_SEED = 1000

#: Training images of the learned explainers (``pretrain-ltx``, ``train-diffmask``): the
#: classifiers' first epoch. Explainers are trained on images their explainee was trained on,
#: as in the papers (an explainer learns what the trained model does on its training data).
EXPLAINER_TRAIN_SEED = CLASSIFIER_TRAIN_SEED

#: Validation images of pLTX pretraining: the best checkpoint is selected on them (by the
#: positive-perturbation AUC). Used by nothing else.
LTX_VAL_SEED = 424_242

#: Validation images of DiffMask training: the selected step is chosen on them (KL and
#: agreement constraints, then the expected keep fraction). Used by nothing else.
DIFFMASK_VAL_SEED = 4242

#: Held-out images of the recorded figures: the classifiers' held-out accuracy and the
#: DiffMask gates' held-out KL, agreement and kept fraction in the weights manifest.
HELD_OUT_SEED = 999_999

#: Images of the method comparison: ``captum-vit demo``, ``captum-vit evaluate`` on the
#: synthetic benchmark and the leaderboard (explained, never trained on). Their two-object
#: images (class sensitivity) use the next seed, ``BENCHMARK_SEED + 1``.
BENCHMARK_SEED = 12345

#: Images of the export parity table (exported ONNX graph against PyTorch).
EXPORT_PARITY_SEED = 777_001


def classifier_epoch_seed(epoch: int) -> int:
    """The seed of the images of classifier training epoch ``epoch`` (0-based)."""
    return CLASSIFIER_TRAIN_SEED + epoch
