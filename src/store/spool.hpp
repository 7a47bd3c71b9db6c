// store/spool: the part of a message body that has arrived beyond the first piece, kept in an
// unlinked temporary file beside the queue while DATA goes on, so a large message is never held
// whole in memory; the store copies it into the queue, piece by piece, in the commit that makes
// the message durable. The file has no name: a crash or an abandoned transaction leaves nothing.
// It must never be the durable copy (nothing is fsync'd here) and never be read by anyone but
// the store's commit.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace bmx {

// Creates `dir` and any missing parent, each new one mode 0700 whatever the umask (queued mail
// is nobody else's to read); an existing directory is left as it is. Throws StoreError.
void make_private_dirs(const std::string& dir);

// `path` exists as a file of mode 0600 (created empty if missing, narrowed if wider), and so
// do SQLite's companions path-wal and path-shm where they exist. Throws StoreError.
void make_private_file(const std::string& path);

class Spool {
  public:
    // An empty spool in `dir`. Throws StoreError.
    static std::shared_ptr<Spool> open(const std::string& dir);
    ~Spool();
    Spool(const Spool&) = delete;
    Spool& operator=(const Spool&) = delete;

    void append(std::string_view data);  // throws StoreError (e.g. the disk is full)
    std::int64_t size() const { return size_; }
    std::string read(std::int64_t offset, std::size_t n) const;  // throws StoreError

  private:
    explicit Spool(int fd) : fd_(fd) {}
    int fd_;
    std::int64_t size_ = 0;
};

}  // namespace bmx
