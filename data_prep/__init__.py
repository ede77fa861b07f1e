"""Data preparation: the "shapes world" demo data and converters into ALBEF's JSON formats.

- :mod:`data_prep.shapes`: scene model (sampling scenes, rendering them with PIL).
- :mod:`data_prep.captions`: caption / VQA question / NLVR statement / VE hypothesis templates.
- :mod:`data_prep.demo_data`: writes every demo file in ALBEF's JSON formats
  (``python -m data_prep.demo_data --out data/demo``).
- :mod:`data_prep.easy_vqa_convert`: converts the pip package ``easy_vqa`` to the same formats.
- Converters of the public raw annotation files: :mod:`data_prep.convert_coco_flickr`
  (Karpathy splits), :mod:`data_prep.convert_vqa` (VQA v2 + Visual Genome QA),
  :mod:`data_prep.convert_nlvr2`, :mod:`data_prep.convert_snli_ve`; shared I/O in
  :mod:`data_prep._io`.
"""
