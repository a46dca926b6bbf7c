"""Background stages on keyframes: matching, sparse global alignment, MVS, transients."""
