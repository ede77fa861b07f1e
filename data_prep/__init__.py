"""Data preparation: the deterministic "shapes world" demo data and the easy-vqa converter.

- :mod:`data_prep.shapes`: scene model (sampling scenes, rendering them with PIL).
- :mod:`data_prep.captions`: caption / VQA question / NLVR statement / VE hypothesis templates.
- :mod:`data_prep.demo_data`: writes every demo file in ALBEF's JSON formats
  (``python -m data_prep.demo_data --out data/demo``).
- :mod:`data_prep.easy_vqa_convert`: converts the pip package ``easy_vqa`` to the same formats.
"""
