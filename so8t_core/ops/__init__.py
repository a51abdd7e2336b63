"""Operations: the /think server (HTTP, answer logic, model resolution), the audit log and OCR at run time."""
