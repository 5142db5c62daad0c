"""The torch side of the baselines (their injections and modules), one module per method.

Kept apart from the registering modules (`sptbench/baselines/<method>.py`), which import them when a model is built:
method discovery (`sptbench list methods`) imports no torch.
"""
