"""Imported by the scoring workers' forkserver only: one comparison, so that every worker forked from it starts with
the LaTeX parser and math-verify's comparison warm (their first use costs 0.1-0.3 s, on a deadline's clock)."""

from rewards.verify import equivalent

equivalent("\\frac{1}{2}", "0.5")
