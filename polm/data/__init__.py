"""The data layer: record formats and validation, loaders, chat templating with label masks, collators.

records.py (formats, `validate_record`) · loaders.py (`load_records`) · templating.py (`encode_records`:
token ids + label masks) · collate.py (`pad_collate`, `pack_collate`). Import the submodule you need:
this package imports nothing itself, so reading data never pulls in torch or transformers.
"""
