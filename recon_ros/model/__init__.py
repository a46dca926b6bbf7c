"""The Spann3R network and its spatial memory (torch only; no files, ROS or maps).

Modules: ``config`` (architecture sizes, memory/runtime/model config groups), ``rope``,
``blocks``, ``trunk`` (DUSt3R encoder + decoders + heads), ``dpt``, ``memory``, ``network``
(``Spann3RNet``, ``build_model``, ``build_random_model``), ``stream`` (``Spann3RStream``,
``run_sequence``), ``preprocess`` (``preprocess_rgb``), ``precision`` and ``checkpoint``
(``load_model``, ``load_spann3r_weights``, ``load_dust3r_weights``).
"""
