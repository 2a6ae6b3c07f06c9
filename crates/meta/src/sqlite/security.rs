//! [`SecurityStore`] for [`SqliteStore`]: the `scram_credentials` table
//! (schema v10).

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::conn::SqliteStore;
use crate::{Result, ScramCredential, SecurityStore};

#[async_trait]
impl SecurityStore for SqliteStore {
    async fn put_scram_credential(&self, user: &str, credential: &ScramCredential) -> Result<()> {
        let (user, c) = (user.to_owned(), credential.clone());
        self.write("put_scram_credential", move |tx| {
            tx.prepare_cached(
                "INSERT INTO scram_credentials \
                     (user_name, mechanism, salt, stored_key, server_key, iterations) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (user_name, mechanism) DO UPDATE SET salt = excluded.salt, \
                     stored_key = excluded.stored_key, server_key = excluded.server_key, \
                     iterations = excluded.iterations",
            )?
            .execute(params![
                user,
                c.mechanism,
                c.salt,
                c.stored_key,
                c.server_key,
                c.iterations
            ])?;
            Ok(())
        })
        .await
    }

    async fn delete_scram_credential(&self, user: &str, mechanism: &str) -> Result<bool> {
        let (user, mechanism) = (user.to_owned(), mechanism.to_owned());
        self.write("delete_scram_credential", move |tx| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM scram_credentials WHERE user_name = ?1 AND mechanism = ?2",
                )?
                .execute(params![user, mechanism])?;
            Ok(n > 0)
        })
        .await
    }

    async fn scram_credential(
        &self,
        user: &str,
        mechanism: &str,
    ) -> Result<Option<ScramCredential>> {
        let (user, mechanism) = (user.to_owned(), mechanism.to_owned());
        self.read("scram_credential", move |tx| {
            Ok(tx
                .prepare_cached(
                    "SELECT salt, stored_key, server_key, iterations FROM scram_credentials \
                     WHERE user_name = ?1 AND mechanism = ?2",
                )?
                .query_row(params![user, mechanism], |r| {
                    Ok(ScramCredential {
                        mechanism: mechanism.clone(),
                        salt: r.get(0)?,
                        stored_key: r.get(1)?,
                        server_key: r.get(2)?,
                        iterations: r.get(3)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn list_scram_credentials(&self) -> Result<Vec<(String, String, i32)>> {
        self.read("list_scram_credentials", move |tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT user_name, mechanism, iterations FROM scram_credentials \
                 ORDER BY user_name, mechanism",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}
