-- The current record of each card. Card data is kept only as the JWE we received (ciphertext).
CREATE TABLE cards (
    card_id                  text        PRIMARY KEY,
    consumer_id              text        NOT NULL,
    state                    text        NOT NULL CHECK (state IN ('PENDING', 'REGISTERED', 'FAILED')),
    source                   text        CHECK (source IN ('EXPLICIT', 'IMPLICIT_TOKENIZATION', 'IMPLICIT_ORDER')),
    card_product_id          text,
    encrypted_card           text,
    initial_state            text        CHECK (initial_state IN ('ACTIVE', 'INACTIVE')),
    implicit_while_in_flight text        CHECK (implicit_while_in_flight IN ('IMPLICIT_TOKENIZATION', 'IMPLICIT_ORDER')),
    failure                  text,
    registered_at            timestamptz,
    version                  bigint      NOT NULL DEFAULT 0,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);

-- Operators look for cards that are not registered; registered ones are the vast majority.
CREATE INDEX cards_not_registered ON cards (state, updated_at) WHERE state <> 'REGISTERED';
