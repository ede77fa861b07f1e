"""Data preparation: the "shapes world" demo data and converters into ALBEF's JSON formats.

- :mod:`albef_struct.data_prep.shapes`: scene model (sampling scenes, rendering them with PIL).
- :mod:`albef_struct.data_prep.captions`: caption / VQA question / NLVR statement / VE hypothesis templates.
- :mod:`albef_struct.data_prep.demo_data`: writes every demo file in ALBEF's JSON formats
  (``python -m albef_struct.data_prep.demo_data --out data/demo``).
- :mod:`albef_struct.data_prep.easy_vqa_convert`: converts the pip package ``easy_vqa`` to the same formats.
- Converters of the public raw annotation files: :mod:`albef_struct.data_prep.convert_coco_flickr`
  (Karpathy splits), :mod:`albef_struct.data_prep.convert_vqa` (VQA v2 + Visual Genome QA),
  :mod:`albef_struct.data_prep.convert_nlvr2`, :mod:`albef_struct.data_prep.convert_snli_ve`; shared I/O in
  :mod:`albef_struct.data_prep._io`.
"""
