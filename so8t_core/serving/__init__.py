"""Serving: the /think server (HTTP, answer logic, model resolution, limits), the audit log and OCR at run time."""
