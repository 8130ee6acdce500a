"""Model versions as one concept: the registry of version kinds (encoder, masked, head, fine-tuned, whitening,
DBA, TTA, ensemble), each rebuilding the encoder of a stored ``models`` row from its ``kind`` and ``config``,
one resolver (:func:`encoder_for_model`) with the one fingerprint check, and publication/refresh of derived
versions. Imports ``engine.masking``, ``engine.encoders``, ``engine.storage`` and below.

Importing the package registers every kind.
"""

from engine.versions import base, derived, trained  # noqa: F401  (each registers its kinds)
from engine.versions.kinds import KINDS, BuildContext, VersionKind, list_kinds, register_kind
from engine.versions.query import query_encoder
from engine.versions.resolve import check_fingerprint, encoder_for_model, lineage

__all__ = ["KINDS", "BuildContext", "VersionKind", "check_fingerprint", "encoder_for_model", "lineage", "list_kinds", "query_encoder", "register_kind"]
