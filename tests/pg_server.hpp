// A PostgreSQL 15 server for the tests of that engine, shared by the unit and net tests:
// $BMX_TEST_PG (a libpq URI of a database where test databases may be created), or else one
// started from the test binary itself by tests/e2e/pg.py on a free loopback port, stopped at the
// end. Each test makes a database of its own (pg_new_database) and drops it.
#pragma once

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <string>

namespace bmx::test {

class PgServer : public ::testing::Environment {
  public:
    static const std::string& admin_url() { return url_; }
    void SetUp() override {
        if (const char* u = std::getenv("BMX_TEST_PG")) {
            url_ = u;
            return;
        }
        char tmpl[] = "/tmp/bmx_pg_test_XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        ::chmod(tmpl, 0755);  // the server runs as `postgres`
        dir_ = tmpl;
        const std::string cmd = "python3 " BMX_SOURCE_DIR "/tests/e2e/pg.py start " + dir_ +
                                "/c 0 >" + dir_ + "/start.log 2>&1";
        ASSERT_EQ(std::system(cmd.c_str()), 0)
            << "cannot start PostgreSQL 15 for the store tests (see " << dir_ << "/start.log)";
        std::ifstream in(dir_ + "/c/url");
        std::getline(in, url_);
        ASSERT_FALSE(url_.empty());
    }
    void TearDown() override {
        if (dir_.empty()) return;
        const std::string cmd = "python3 " BMX_SOURCE_DIR "/tests/e2e/pg.py stop " + dir_ +
                                "/c >/dev/null 2>&1; rm -rf " + dir_;
        (void)std::system(cmd.c_str());
    }

  private:
    static inline std::string url_;
    std::string dir_;
};
inline const auto* const g_pg_server = ::testing::AddGlobalTestEnvironment(new PgServer);

// One value from a query ("no row" when there is none, the error text when it fails).
inline std::string pg_query(const std::string& url, const std::string& sql) {
    PGconn* c = PQconnectdb(url.c_str());
    std::string out = "no connection";
    if (PQstatus(c) == CONNECTION_OK) {
        PGresult* r = PQexec(c, sql.c_str());
        const auto st = PQresultStatus(r);
        out = st == PGRES_TUPLES_OK && PQntuples(r) > 0         ? PQgetvalue(r, 0, 0)
              : st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK ? "no row"
                                                                : PQresultErrorMessage(r);
        PQclear(r);
    }
    PQfinish(c);
    return out;
}

inline std::string pg_url(const std::string& db) {
    const auto& admin = PgServer::admin_url();
    return admin.substr(0, admin.rfind('/') + 1) + db;
}

// A new empty database; "" when the server cannot make one.
inline std::string pg_new_database() {
    static int n = 0;
    const std::string db = "bmx_test_" + std::to_string(::getpid()) + "_" + std::to_string(++n);
    if (PgServer::admin_url().empty()) return "";
    return pg_query(PgServer::admin_url(), "CREATE DATABASE " + db) == "no row" ? db : "";
}

inline void pg_drop_database(const std::string& db) {
    pg_query(PgServer::admin_url(), "DROP DATABASE " + db + " WITH (FORCE)");
}

}  // namespace bmx::test
