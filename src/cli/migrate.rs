//! `card-registrar migrate`: apply the migrations in `migrations/`.

use super::CliError;
use crate::config::DatabaseSettings;
use crate::store;

/// Applies pending migrations.
pub async fn run(db: &DatabaseSettings) -> Result<(), CliError> {
    db.validate()?;
    let pool = store::connect(&db.database_url, 2).await.map_err(|e| CliError::context("migrate", e))?;
    store::migrate(&pool).await.map_err(|e| CliError::context("migrate", error_chain(&e)))?;
    let applied = store::MIGRATOR.iter().count();
    super::print_out(&format!("migrations applied ({applied} known)\n"))?;
    Ok(())
}

/// The error and its causes on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
