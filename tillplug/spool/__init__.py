"""Printing as a spool: durable jobs per printer, one task per printer, the truth about paper."""

from tillplug.spool.jobs import JobState, JobStore, PrintJob
from tillplug.spool.link import Outcome, PrinterLink
from tillplug.spool.spool import PrintSpool
from tillplug.spool.spools import PrintSpools

__all__ = ["JobState", "JobStore", "Outcome", "PrintJob", "PrintSpool", "PrintSpools", "PrinterLink"]
