#pragma once
// Pool events (low water marks, mode changes) fanned out to `thinpool events` streams. publish()
// runs on the pool's internal threads, so it only queues and wakes: it never blocks on a slow
// reader (a reader that falls MAX_QUEUED lines behind loses the oldest and is told so).
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace thin::daemon {

class event_hub {
public:
    static constexpr std::size_t MAX_QUEUED = 1024;

    class subscription {
    public:
        subscription();
        ~subscription();
        subscription(const subscription&) = delete;
        subscription& operator=(const subscription&) = delete;
        int fd() const { return efd_; }  // readable when lines are queued
        // Takes the queued lines (and clears the fd's readiness).
        std::vector<std::string> take();

    private:
        friend class event_hub;
        void push(const std::string& line);
        int efd_ = -1;
        std::mutex mutex_;
        std::deque<std::string> lines_;
        std::size_t dropped_ = 0;
    };

    std::shared_ptr<subscription> subscribe();
    void unsubscribe(const std::shared_ptr<subscription>& s);
    void publish(const std::string& line);
    std::size_t subscribers() const;

private:
    mutable std::mutex mutex_;
    std::vector<std::shared_ptr<subscription>> subs_;
};

} // namespace thin::daemon
