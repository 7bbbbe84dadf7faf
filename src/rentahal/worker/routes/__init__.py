"""HTTP routes of the worker, one module per protocol it speaks."""
