"""Built-in device drivers, installed as ``tillplug.drivers`` and found only through entry points."""
