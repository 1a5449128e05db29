"""The loyalty flows: look-up, earning, spending points, vouchers, voids."""
