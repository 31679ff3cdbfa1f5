/* migrate.h - moving a user's heads from one model's input space into
 * another's (DESIGN.md section 10; what is exact and what is approximated
 * is in schemas/model.md, "Migration between models").
 *
 * A head is s_h = sum_i w_i exp(-lambda_h (t_ref - t_i)) e_in[item_i]. The
 * part made of events still in the user's history ring is recomputed with
 * the new model's e_in (same weights, same times); the older remainder is
 * mapped with M, the least-squares map from the old e_in to the new one
 * over the items both models know (min ||E_old M - E_new||_F, LAPACK's
 * sgelsd from OpenBLAS). Masses do not depend on e_in and stay as they are.
 *
 * An hl_migration is built once per pair of models and is then read-only:
 * any number of threads may migrate rows with it at once. No threads, no
 * clock, no I/O here. */
#ifndef HL_MIGRATE_H
#define HL_MIGRATE_H

#include "decay.h"
#include "model.h"
#include "table.h"

typedef struct hl_migration hl_migration;   /* opaque */

/* Fits M over the items from and to both know and maps from's rows to
 * to's. The two must share the state's shape (dim, heads, half-lives):
 * otherwise HL_EMISMATCH with a reason naming the difference (the table
 * would have to change shape: a live swap refuses such a model, a
 * restart migrates into it with hl_migration_create_any). tw are the weights per event type the rows were built with
 * (the ring keeps an event's type, not its weight field: see model.md).
 * NULL and a reason on failure. */
hl_migration *hl_migration_create(const hl_model *from, const hl_model *to,
                                  const float tw[HL_N_TYPES],
                                  char *errbuf, size_t errlen);
void          hl_migration_destroy(hl_migration *mg);   /* NULL is a no-op */

/* The same with a weight per item of from (n_items floats, >= 0; NULL:
 * all 1): M minimises sum_j w_j ||e_old[j] M - e_new[j]||^2 instead, so
 * the items that make up most of the heads' remainder are mapped best. */
hl_migration *hl_migration_create_weighted(const hl_model *from, const hl_model *to,
                                           const float tw[HL_N_TYPES], const float *item_w,
                                           char *errbuf, size_t errlen);

/* When the old model is not at hand (a snapshot of a model no longer
 * kept): rows are rebuilt from their ring alone, heads and masses, with
 * to's e_in by each entry's item key and its recorded weight (tw[type]
 * when the ring does not know it). What is older than the ring is lost. */
hl_migration *hl_migration_rebuild(const hl_model *to, const float tw[HL_N_TYPES],
                                   char *errbuf, size_t errlen);

/* The same for any two models: dim, number of heads and half-lives may
 * differ (a reshape). M is then (dim_from, dim_to), and rows move into a
 * table of to's shape with hl_migration_row_into / hl_migration_table_into
 * (hl_migration_row(s) and hl_migration_table are for same-shape rows
 * only). Per new head: the ring's part is recomputed under to (exact);
 * what is older than the ring comes from the old head of the same
 * half-life (exact up to M), else is interpolated between the two old
 * heads around it (schemas/model.md, "Another dim, number of heads or
 * half-lives"). For two models of one shape it returns what
 * hl_migration_create returns (rows migrate in place), so a caller that
 * takes either shape (a swap, a restore, `halflife model compare`) calls
 * this one. */
hl_migration *hl_migration_create_any(const hl_model *from, const hl_model *to,
                                      const float tw[HL_N_TYPES], char *errbuf, size_t errlen);
/* The local correction (migrate.c, rows_end; reshape_local for a
 * reshape, per new head): what is older than a user's ring also moves by
 * kappa times its mass times the mean of e_new - e_old M over the ring's
 * items from knew (e_new 0 for one to drops). kappa 0: M alone (the
 * migration before 2026-12-05). Call before any row is migrated. */
#define HL_MIG_LOCAL 0.5f
void hl_migration_set_local(hl_migration *mg, float kappa);

/* 1 when the rows change shape (only hl_migration_*_into then). */
int           hl_migration_reshapes(const hl_migration *mg);

const float *hl_migration_map(const hl_migration *mg);  /* M: (dim_from, dim_to) row-major */
int          hl_migration_shared(const hl_migration *mg); /* items both know */
/* How well M fits, unweighted, over the items both know:
 * ||E_old M - E_new||_F / ||E_new||_F (0: exact; 1: M explains nothing).
 * What is older than a user's ring moves with this error. 0 for a rebuild. */
double       hl_migration_residual(const hl_migration *mg);

/* Migrates one row in place: its heads into to's space, its ring's item
 * rows to to's rows (-1 for an item to does not know; an item from did
 * not know but to does is found by its key and now counts in the ring's
 * part). An HL_ITEM_ADDED entry (an item the live catalogue added, whose
 * e_in the ring does not keep) is left in the remainder, mapped by M like
 * events older than the ring, and not added again under to; its ring item
 * becomes to's row when to knows it, else stays HL_ITEM_ADDED. A rebuild
 * (no from) treats it like -1: found by key in to, or nothing. scratch
 * holds at least 2 n_heads dim floats. */
void hl_migration_row(const hl_migration *mg, hl_row_edit *e, float *scratch);

/* The same for n rows at once (one SGEMM for all their remainders);
 * scratch holds at least 2 n n_heads dim floats. Each row's result equals
 * hl_migration_row's up to SGEMM's rounding. */
void hl_migration_rows(const hl_migration *mg, hl_row_edit *e, int n, float *scratch);

/* Migrates every live row of tbl (a restore from a snapshot written under
 * the old model), HL_MIG_ROWS at a time. Returns the rows migrated, or a
 * negative HL_ENOMEM (the table is then partly migrated: drop it). */
#define HL_MIG_ROWS 64
int64_t hl_migration_table(const hl_migration *mg, hl_table *tbl);

/* One row v (from's shape, or any shape for a rebuild) into to's shape:
 * s (n_heads dim floats), m (n_heads) and hist_item (v->history entries)
 * written; the rest of the row is v's. Same shape: hl_migration_row's
 * result to the bit. scratch holds hl_migration_scratch_floats(mg). */
size_t hl_migration_scratch_floats(const hl_migration *mg);
void   hl_migration_row_into(const hl_migration *mg, const hl_row_view *v, float *s,
                             float *m, int32_t *hist_item, float *scratch);

/* Every live row of src (a restore under from, or any shape for a
 * rebuild) into the empty dst of to's shape (same history length), at
 * the same row ids, with src's table meta: dst then behaves as src would
 * have under to. Returns the rows moved, or a negative HL_E* (HL_EINVAL:
 * dst is not to's shape; HL_ENOMEM: dst is partly filled, drop it). */
int64_t hl_migration_table_into(const hl_migration *mg, const hl_table *src, hl_table *dst);

/* M = argmin ||A M - B||_F for A (n, dim_a) and B (n, dim_b), row-major;
 * M is (dim_a, dim_b) row-major. With n = 0 M is zero. Rank-deficient A
 * gets the minimum-norm solution (singular values below 1e-6 of the
 * largest are dropped). 0, or HL_ENOMEM / HL_EINVAL (LAPACK's info in the
 * reason). */
int hl_migration_fit(const float *a, const float *b, int n, int dim_a, int dim_b,
                     float *m, char *errbuf, size_t errlen);

#endif
