-- +goose Up
-- A province node database's foundation: which provincial unit it serves is set
-- on first start by the node (and must never change afterwards).
CREATE TABLE node_info (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    role          text NOT NULL CHECK (role = 'province'),
    province_code text CHECK (province_code ~ '^[0-9]{6}$'),
    created_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO node_info (role) VALUES ('province');

-- +goose Down
DROP TABLE node_info;
