"""The uncertainty core: the LLPR head with every formula (:mod:`.llpr_head`), last-layer
ensembles and their propagation to forces (:mod:`.propagation`), the streaming fit over the
training set (:mod:`.fit`), the calibration of ``alpha`` and ``varsigma`` (:mod:`.calibrate`)
and the estimator that runs them on a model (:mod:`.estimator`, :class:`llpr.LLPR`)."""
