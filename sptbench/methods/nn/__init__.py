"""The torch side of SPT, SPT-DARTS and LPT: prompt generators, the gated injection, the search steps.

Kept apart from the registering module (`sptbench/methods/spt.py`), which imports them when a model is built: method
discovery (`sptbench list methods`) imports no torch.
"""
