-- +goose Up
-- The clearing database's foundation: a record of which node built it.
CREATE TABLE node_info (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    role       text NOT NULL CHECK (role = 'clearing'),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO node_info (role) VALUES ('clearing');

-- +goose Down
DROP TABLE node_info;
