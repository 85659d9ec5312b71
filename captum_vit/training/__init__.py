"""Training the classifiers and learned explainers: the ``train-models``, ``pretrain-ltx`` and
``train-diffmask`` commands and the :class:`~captum_vit.training.trainer.Trainer` they share.

A leaf of the package: only the command line loads it; what explaining needs at inference
(explainer networks, objectives, gates) is in :mod:`captum_vit.explainers`.

======================  ==================================================================
module                  holds
======================  ==================================================================
``trainer``             the training loop (checkpoints, exact resume, DDP)
``checkpoint``          atomic checkpoint writes, safe loads, RNG states
``schedules``           learning-rate schedules
``train_classifier``    ``captum-vit train-models``
``ltx_pretrain``        ``captum-vit pretrain-ltx`` and :func:`~.ltx_pretrain.pretrain_ltx`
``diffmask``            ``captum-vit train-diffmask``, LookaheadAdam
======================  ==================================================================

Where results go: ``--out`` (a run folder) always; ``--register NAME`` adds the result to the
user registry (``$CAPTUM_VIT_HOME/weights``, default ``~/.cache/captum_vit/weights``,
:mod:`captum_vit.models.registry`), never to the installed package.

Maintainers: the weights shipped in ``captum_vit/weights/`` are produced by these commands.
``--ship`` (hidden from ``--help``) makes ``--register NAME`` write into the package's
``weights/`` folder and its ``manifest.json`` instead of the user registry, e.g.
``captum-vit pretrain-ltx --explainee synthetic-vit --out runs/pltx-vit ... --register
synthetic-vit-pltx --ship`` (run from a source checkout).
"""
