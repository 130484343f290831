// Keeps the test_support library non-empty before any shared helper exists.
namespace thinpool_test_support {}
