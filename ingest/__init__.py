"""Lookalike ingest: scan folders, decode images, encode them and write them to the database."""

from engine.media.decode import DecodeError, decode_image
from engine.media.scan import SourceFile, scan_folder
from ingest.pipeline import IngestConfig, IngestProgress, IngestReport, ingest_files, ingest_folder

__all__ = ["DecodeError", "IngestConfig", "IngestProgress", "IngestReport", "SourceFile", "decode_image", "ingest_files", "ingest_folder", "scan_folder"]
