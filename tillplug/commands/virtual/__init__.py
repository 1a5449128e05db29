"""Virtual devices and a whole till in one object: for the tests, the demo and POS developers."""
