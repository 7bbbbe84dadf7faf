"""One module per scenario of ``rentahal bench``; each has an options class and ``run``."""
