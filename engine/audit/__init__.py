"""Data audit: label mistakes, near-duplicates, outliers and split skews found in the catalogue, stored as findings
and decided through the catalogue's edits (``lookalike audit``)."""

from engine.audit.finders import FINDERS, AuditConfig, Finding, list_finders
from engine.audit.run import AuditReport, audit_model, run_audit
from engine.audit.store import ACTIONS, AuditDecision, DecisionReport, audit_frame, decide, resolve_finding, undo

__all__ = ["ACTIONS", "FINDERS", "AuditConfig", "AuditDecision", "AuditReport", "DecisionReport", "Finding", "audit_frame", "audit_model", "decide",
           "list_finders", "resolve_finding", "run_audit", "undo"]
