//! The store's error type, with a named predicate for "try again later".

/// A failed store operation. Messages name the operation and ids, never card data.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query failed.
    #[error("failed to {op}")]
    Database {
        /// What we were doing.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("failed to apply migrations")]
    Migrate(#[source] Box<sqlx::migrate::MigrateError>),
    /// A stored value does not parse back (the table was edited by hand, or a bug).
    #[error("corrupt {table} row {key}: {detail}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// Row key (an id, never card data).
        key: String,
        /// What does not parse.
        detail: String,
    },
}

impl StoreError {
    /// Wraps a driver error with the operation it interrupted.
    pub fn db(op: &'static str, source: sqlx::Error) -> Self {
        Self::Database { op, source }
    }

    /// Whether retrying the same operation later may succeed (connection lost, database
    /// restarting, deadlock or serialization failure), as opposed to a bug or bad data.
    pub fn is_transient(&self) -> bool {
        let Self::Database { source, .. } = self else { return false };
        match source {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(e) => e.code().is_some_and(|c| {
                // 08: connection exception, 40001 serialization, 40P01 deadlock, 53: resources,
                // 57P01..57P03: admin/crash shutdown, cannot connect now.
                c.starts_with("08")
                    || c == "40001"
                    || c == "40P01"
                    || c.starts_with("53")
                    || c.starts_with("57P")
            }),
            _ => false,
        }
    }
}
