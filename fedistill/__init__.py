"""fedistill: federated learning by dataset distillation, and what it leaks.

The library never imports Flower. Its front door:

>>> from fedistill import data, distill, evaluate
>>> train = data.load_dataset("digits", train=True)
>>> syn = distill.distill("dm", train, ipc=10, seed=0)
>>> evaluate.evaluate_set(syn, data.load_dataset("digits", train=False))
"""

from fedistill.errors import FedistillError

__version__ = "0.1.0"
__all__ = ["FedistillError", "__version__"]
