"""madcore: the shared bottom layer of madmark. It imports nothing of ours.

One implementation each of what every layer above needs:

    madcore.files     atomic file and folder writes (temp + fsync + rename)
    madcore.rng       random generators derived from (seed, generation, purpose)
    madcore.dist      rank / shard / gather under torchrun, identities under plain python
    madcore.dct       the orthonormal 2-D DCT-II by matrix products
    madcore.quality   per-image MSE, PSNR and SSIM
    madcore.errors    MadmarkError: a problem the user can fix, one line, exit code 2
    madcore.images    one image reader (any Pillow mode, 16-bit, alpha) and the PNG writer
    madcore.figures   matplotlib figures through the object API (no global backend switch)
    madcore.columns   Column: a results.csv column declared once (meaning, unit, computed on)
    madcore.faults    a test-only hook that SIGKILLs the process at a named point (resume tests)

``loops``, ``watermark``, ``eval`` and ``madmark`` import it; it imports none of them.
"""
