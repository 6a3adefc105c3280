"""Region selection: the strategy contract, the standard and adaptive selectors, clustering, and region export."""
