"""Readers and writers of annotation formats (ASAP XML, SlideRunner SQLite, ...)."""
