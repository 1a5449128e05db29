"""The customer's displays: what the shopper sees per lane (screen), pole displays, the web page."""
