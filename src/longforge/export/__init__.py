"""``longforge export``: a finished synth run as the datasets long-context trainers read
(Megatron indexed datasets, MosaicML MDS, Hugging Face ``datasets``, datatrove tokenized files
for nanotron), document boundaries kept; see docs/export.md.

* :mod:`longforge.export.source` reads a synth run sequence by sequence with the token offsets
  of every piece (:class:`~longforge.export.source.SynthRun`, :class:`~longforge.export.source.Packed`);
* ``to_megatron``, ``to_mds``, ``to_hf``, ``to_datatrove``: one writer per format;
* :mod:`longforge.export.core` runs one export into a run folder (settings, manifest, atomic).
"""
