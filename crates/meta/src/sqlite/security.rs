//! [`SecurityStore`] for [`SqliteStore`]: the `scram_credentials` table
//! (schema v10), `acls` and `acl_version` (v11).

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::conn::SqliteStore;
use crate::rules::acl;
use crate::{AclBinding, AclFilter, Result, ScramCredential, SecurityStore};

const SELECT_ACLS: &str = "SELECT resource_type, resource_name, pattern_type, principal, host, \
     operation, permission FROM acls \
     ORDER BY resource_type, resource_name, pattern_type, principal, host, operation, permission";

const INSERT_ACL: &str = "INSERT INTO acls (resource_type, resource_name, pattern_type, \
     principal, host, operation, permission) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT DO NOTHING";
const DELETE_ACL: &str = "DELETE FROM acls WHERE resource_type = ?1 AND resource_name = ?2 \
     AND pattern_type = ?3 AND principal = ?4 AND host = ?5 AND operation = ?6 \
     AND permission = ?7";

/// Run `sql` (INSERT_ACL or DELETE_ACL) with `b`'s columns; rows affected.
fn on_binding(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    b: &AclBinding,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(sql)?.execute(params![
        b.resource_type,
        b.resource_name,
        b.pattern_type,
        b.principal,
        b.host,
        b.operation,
        b.permission
    ])
}

fn acl_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AclBinding> {
    Ok(AclBinding {
        resource_type: r.get(0)?,
        resource_name: r.get(1)?,
        pattern_type: r.get(2)?,
        principal: r.get(3)?,
        host: r.get(4)?,
        operation: r.get(5)?,
        permission: r.get(6)?,
    })
}

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

    async fn create_acls(&self, acls: &[AclBinding]) -> Result<()> {
        let acls = acls.to_vec();
        self.write("create_acls", move |tx| {
            let mut added = 0;
            for b in &acls {
                added += on_binding(tx, INSERT_ACL, b)?;
            }
            if added > 0 {
                tx.execute("UPDATE acl_version SET version = version + 1", [])?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_acls(&self, filter: &AclFilter) -> Result<Vec<AclBinding>> {
        let filter = filter.clone();
        self.write("delete_acls", move |tx| {
            let all = tx
                .prepare_cached(SELECT_ACLS)?
                .query_map([], acl_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let doomed: Vec<AclBinding> = all
                .into_iter()
                .filter(|b| acl::matches(&filter, b))
                .collect();
            for b in &doomed {
                on_binding(tx, DELETE_ACL, b)?;
            }
            if !doomed.is_empty() {
                tx.execute("UPDATE acl_version SET version = version + 1", [])?;
            }
            Ok(doomed)
        })
        .await
    }

    async fn list_acls(&self) -> Result<Vec<AclBinding>> {
        self.read("list_acls", move |tx| {
            Ok(tx
                .prepare_cached(SELECT_ACLS)?
                .query_map([], acl_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn acl_version(&self) -> Result<i64> {
        self.read("acl_version", move |tx| {
            Ok(tx.query_row("SELECT version FROM acl_version", [], |r| r.get(0))?)
        })
        .await
    }
}
