"""Everything a comparison leaves behind, computed from one summary: record, tables, grid, plot, HTML report."""
