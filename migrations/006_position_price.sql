-- A position's price now, the one definition every reader uses (the reads, the summary, the live
-- view): its own (a mark, or the price it closed at) or its symbol's market price, whichever came
-- later in the log. A closed position keeps its own. A plain SQL expression, so that the planner
-- inlines it into each query that calls it.
CREATE FUNCTION position_price(
    status text, own numeric, own_tx bigint, own_event bigint,
    market numeric, market_tx bigint, market_event bigint
) RETURNS numeric LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN status <> 'closed' AND market IS NOT NULL
                     AND (own_tx IS NULL OR (market_tx, market_event) > (own_tx, own_event))
                THEN market ELSE own END
$$;
