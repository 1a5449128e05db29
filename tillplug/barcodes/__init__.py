"""Scans: framing bytes into scans, and classifying what each scan is."""

from tillplug.barcodes.classify import Classified, Classifier, ScanKind
from tillplug.barcodes.framing import ScanFramer, ScanText, decode

__all__ = ["Classified", "Classifier", "ScanFramer", "ScanKind", "ScanText", "decode"]
