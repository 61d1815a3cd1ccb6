"""The pruning layer: channel groups, the dependency analysis, plans, folds and the one
surgery pass, plus the size metrics (A-E, C-E). Builds on :mod:`evonnx.model` only."""
