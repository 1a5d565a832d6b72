"""The one owner of a run directory: its layout (:mod:`.layout`), its tables (:mod:`.tables`),
who may write into it (:mod:`.ownership`), how a run resumes (:mod:`.resume`) and loading a run
(:mod:`.load`). Atomic writes live in :mod:`dcgan_xai.files`."""
