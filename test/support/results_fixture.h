/*
 * A task that returns one result of every slice type (machinery's 15:
 * []bool, []int ... []int64, []uint ... []uint64, []float32, []float64,
 * []string and []byte) with the extreme values of each, and the check that
 * reads them back exactly through the public getters. Shared by the eager
 * test (test_registry.c) and the MongoDB store's (test_store_mongo.c), so
 * both prove the same values.
 */
#ifndef KILN_TEST_RESULTS_FIXTURE_H
#define KILN_TEST_RESULTS_FIXTURE_H

#include <kiln.h>

/* How many results slices_task adds: each slice type with values, then
 * each one empty. */
#define SLICE_RESULTS 30

/* A task function: adds the results (public API only) and returns KILN_OK,
 * or the first failing setter's code. `user` is unused. */
kiln_err slices_task(kiln_task_ctx *ctx, void *user);

/* Asserts that `res` holds exactly what slices_task adds: the types, the
 * lengths, every element (doubles bit for bit). On the test thread. */
void check_slice_results(const kiln_signature *res);

#endif /* KILN_TEST_RESULTS_FIXTURE_H */
