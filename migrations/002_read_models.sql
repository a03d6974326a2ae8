-- Read models: derived from the events, droppable and rebuildable at any time.

CREATE TABLE positions (
    position_id     uuid        PRIMARY KEY,
    owner           text        NOT NULL,
    symbol          text        NOT NULL,
    side            text        NOT NULL CHECK (side IN ('long', 'short')),
    status          text        NOT NULL CHECK (status IN ('pending', 'open', 'closed')),
    quantity        numeric     NOT NULL,
    entry_price     numeric     NOT NULL,
    -- The last price set on the position itself (a mark, or its closing price), and the log
    -- position (tx_id, global_position) of the event that set it. Reads show the later, in log
    -- order, of this and the symbol's market price: the answer cannot depend on commit order.
    current_price   numeric,
    mark_tx         bigint,
    mark_position   bigint,
    stop_loss       numeric,
    take_profit     numeric,
    strategy        text,
    notes           text,
    realized_pnl    numeric     NOT NULL,
    closed_quantity numeric     NOT NULL,
    closed_value    numeric     NOT NULL,
    exit_price      numeric,
    opened_at       timestamptz,
    closed_at       timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    version         bigint      NOT NULL,
    -- The log position of the last event applied to this row.
    last_event      bigint      NOT NULL
);

CREATE INDEX positions_newest ON positions (created_at DESC, position_id DESC);
CREATE INDEX positions_owner_newest ON positions (owner, created_at DESC, position_id DESC);
CREATE INDEX positions_open_by_symbol ON positions (symbol) WHERE status = 'open';

-- The latest market price of each symbol, in log order.
CREATE TABLE market_prices (
    symbol     text        PRIMARY KEY,
    price      numeric     NOT NULL,
    updated_at timestamptz NOT NULL,
    tx_id      bigint      NOT NULL,
    last_event bigint      NOT NULL
);
